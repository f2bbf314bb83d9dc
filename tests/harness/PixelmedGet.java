// A C-GET client for interop tests, built on PixelMed's com.pixelmed.network.GetSOPClassSCU.
//
// PixelMed's own GetSOPClassSCU main proposes every storage SOP class it knows, with more
// presentation contexts than an association can carry; this one proposes only the storage SOP
// classes it is given. Run as a single source file (JDK 11+), with Debian's pixelmed-apps:
//
//   java -cp /usr/share/java/pixelmed.jar tests/harness/PixelmedGet.java \
//       HOST PORT CALLED_AET CALLING_AET OUTPUT_DIR STUDY_UID STORAGE_SOP_CLASS...
//
// A STUDY level C-GET in the Study Root model. For each storage SOP class PixelMed proposes a
// context with every uncompressed transfer syntax and one context per transfer syntax ("their
// choice" and "our choice"), with the SCP role. Prints "RECEIVED <file> <transfer syntax>"
// for each instance stored, "DONE" when the C-GET ended with Success; PixelMed's exception
// (exit status 1) otherwise.

import com.pixelmed.dicom.Attribute;
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.AttributeTag;
import com.pixelmed.dicom.CodeStringAttribute;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.dicom.StoredFilePathStrategy;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.dicom.UniqueIdentifierAttribute;
import com.pixelmed.network.GetSOPClassSCU;
import com.pixelmed.network.IdentifierHandler;
import com.pixelmed.network.ReceivedObjectHandler;
import java.io.File;
import java.util.HashSet;
import java.util.Set;

public class PixelmedGet {
    private static void put(AttributeList list, Attribute attribute, String value) throws Exception {
        attribute.addValue(value);
        list.put(attribute.getTag(), attribute);
    }

    public static void main(String[] arg) throws Exception {
        if (arg.length < 7) {
            System.err.println(
                "usage: PixelmedGet HOST PORT CALLED_AET CALLING_AET OUTPUT_DIR STUDY_UID"
                    + " STORAGE_SOP_CLASS...");
            System.exit(2);
        }
        AttributeList identifier = new AttributeList();
        put(identifier, new CodeStringAttribute(TagFromName.QueryRetrieveLevel), "STUDY");
        put(identifier, new UniqueIdentifierAttribute(TagFromName.StudyInstanceUID), arg[5]);
        Set<String> storageClasses = new HashSet<>();
        for (int i = 6; i < arg.length; i++) {
            storageClasses.add(arg[i]);
        }
        ReceivedObjectHandler received = new ReceivedObjectHandler() {
            @Override
            public void sendReceivedObjectIndication(
                    String fileName, String transferSyntax, String callingAETitle) {
                System.out.println("RECEIVED " + fileName + " " + transferSyntax);
                System.out.flush();
            }
        };
        new GetSOPClassSCU(
            arg[0], Integer.parseInt(arg[1]), arg[2], arg[3],
            SOPClass.StudyRootQueryRetrieveInformationModelGet, identifier,
            new IdentifierHandler(), new File(arg[4]),
            StoredFilePathStrategy.BYSOPINSTANCEUIDINSINGLEFOLDER, received,
            storageClasses, true /* their choice */, true /* our choice */, false);
        System.out.println("DONE");
    }
}
